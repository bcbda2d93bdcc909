"""What runs inside Ray actors: decoding, the models they hold, and the pure algorithms they drive."""
