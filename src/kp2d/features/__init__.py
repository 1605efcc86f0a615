"""Keypoints from dense network outputs: the output format, selection (NMS, top-k), extraction, matching.

Written against :class:`~kp2d.features.dense.KeyPointNetOutput` and any callable network, so the models
above can offer ``extract`` without a cycle.
"""
