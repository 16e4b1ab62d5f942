"""Panel/HoloViews components over trainlab\x27s core objects."""
