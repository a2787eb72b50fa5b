"""Data: tokenizer, processor, synthetic shapes, the DataModule over Hugging Face datasets.

Imports the model layer's config only. ``paligemma.data.processor`` needs neither Lightning nor datasets.
"""
