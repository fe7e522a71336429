"""Video: persons tracked across frames (tracking.py) and their keypoints smoothed over time
(smoothing.py). Plain numpy, no model: ``predict.py`` calls them on a video's decoded poses."""
