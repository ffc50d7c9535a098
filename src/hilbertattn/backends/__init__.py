"""Backends: one function (block-sparse masked attention) computed three ways."""
