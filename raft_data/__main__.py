from raft_data.cli.main import main

if __name__ == "__main__":  # vLLM starts its engine in a spawned process, which imports this module again
    main()
