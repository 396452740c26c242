"""3-D segmentation: training, sliding-window inference, named protocols and the intensity baseline."""
