"""Image data: locate, move, convert, hash and place Glance image files."""
