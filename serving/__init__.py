"""The recommender (a stage): requests in, recommendations out. Start at app.py (the request group and
its error answers), then recommend.py (features → towers → retrieval → the four filters)."""
