"""The render engine: requests, the render path, jobs. No Qt."""
