"""Models: choosing the device, loading and saving a causal language model folder, and the one teacher-forced
log-probability and perplexity function that scoring, eval and reports share.
"""
