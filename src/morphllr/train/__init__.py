"""Stage 4, training a density model on an image set."""
