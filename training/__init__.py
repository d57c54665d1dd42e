"""Trainer and exporter for Switchyard's bundled Switch-style MoE model (OLMoE format)."""
