"""Small shared pieces every room uses: the injected clock and the one log configuration."""
