"""Thin FastStream subscribers: each takes a schemas/ model and calls one service function."""
