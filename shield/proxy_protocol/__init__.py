"""The PROXY protocol (HAProxy's, versions 1 and 2): the header a load balancer puts before a
connection's bytes to say whom it carries, read by the DMZ (``parse``) and written by the
connector toward backends (``build``). ``header`` holds what both share."""
