"""cgroup backends behind one interface (``base.Backend``); ``base.detect`` picks one."""
