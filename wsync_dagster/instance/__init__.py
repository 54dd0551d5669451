"""Dagster instance parts wsync configures in dagster.yaml."""
