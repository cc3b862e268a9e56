"""raft_sft: the supervised fine-tuning stage of a RAFT round, on TRL's SFTTrainer."""
