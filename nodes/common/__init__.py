"""What the node modules share: input declarations and checks, previews, progress."""
