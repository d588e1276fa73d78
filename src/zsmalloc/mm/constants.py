"""Page size and page flag bits, shared by the modules of ``zsmalloc.mm``."""

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT

PG_locked = 0x01  # the page lock
PG_movable = 0x02  # an owner registered movable-page callbacks for it
# taken by the VM for migration (between isolate and migrate/putback): the
# kernel's PG_isolated, PageMovableOpsIsolated since 6.17
PG_isolated = 0x04
