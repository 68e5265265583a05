"""Training losses of kMaX-DeepLab and the Hungarian matcher they share."""
