"""Command-line front end of maskid."""
