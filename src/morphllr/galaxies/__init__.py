"""Stage 2, galaxies: PSFs, Sérsic fits, archetypes, sky patches, mock observations of simulations, degraded copies."""
