"""Face sources (built-in synthetic, real folders), alignment, grain pipelines, pairs."""
