"""The videos domain: image→video (and text→video where the model can) on local diffusers
pipelines and Runway."""
