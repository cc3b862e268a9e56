from raft_data.cli import main

main()
