"""Stage 1, data: reading images and catalogues, the recipe (crop, zoom, stretch), segmentation, the ImageSet format."""
