"""Contrast synthesis: T1, T2, FLAIR and PD images rendered from tissue maps.

``relaxation.toml`` holds the tissue relaxation times per field with their sources;
``signal`` has the signal equations; ``synthesis`` renders an image from tissue maps for a
field and a sequence. No training data of high-field T2 or FLAIR ships in any package we may
use, so these renderings are how those contrasts are simulated and benchmarked.
"""
