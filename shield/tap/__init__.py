"""twistd entry points: ``Options`` and ``makeService`` for each gateway (see twisted/plugins/)."""
