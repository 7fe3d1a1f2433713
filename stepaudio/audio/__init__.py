"""Audio front end: reading, resampling, normalisation and spectral features."""
