"""Rewards: built-in scorers, Hugging Face reward models, loading the configured reward by name or
`module:function` (`loading`), and fine-tuning a learned reward model on human ratings (`reward_model`).
"""
