"""Models: choosing the device, loading and saving a causal language model folder, checking a folder before it is
loaded (finite weights, the config's budgets within the model's context and width), and the one teacher-forced
log-probability and perplexity function that scoring, eval and reports share.
"""
