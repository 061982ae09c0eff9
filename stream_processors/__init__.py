"""The stream worker (a stage): interactions and item updates in, users' recent histories and items'
stock and price out, in Feast's online store. Start at app.py."""
