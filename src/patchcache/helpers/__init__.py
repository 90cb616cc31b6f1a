"""Squid line-protocol helper programs: store-ID and URL-rewrite."""
