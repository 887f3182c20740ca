"""Stage 3, the density model: likelihood heads, the PixelCNN++ network, its plain twin, model files."""
