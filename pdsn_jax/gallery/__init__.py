"""Gallery stores of U on disk and the streaming masked search over them."""
