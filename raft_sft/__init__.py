"""raft_sft: the supervised fine-tuning stage of a RAFT round on TRL's SFTTrainer (`train`), distillation of any
rounds' selected data into a student (`distill`), and layer-dropped students (`student`).
"""
