"""Stage 6, comparing image sets: LLR of every image under both models, statistics, tables."""
