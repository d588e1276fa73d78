"""The NBD wire protocol for the tests: constants and byte layouts (doc/proto.md of NetworkBlockDevice/nbd).

This module owns the numbers and the structs, nothing that does I/O; the
test client (``tests/nbd_client.py``) builds on it, to drive the export
nbdkit serves byte by byte (the product has no protocol code of its own:
nbdkit speaks it).  Every integer on the wire is big-endian ("network order").

Fixed-newstyle handshake::

    S: NBDMAGIC  0x4e42444d41474943                      64 bits
    S: IHAVEOPT  0x49484156454f5054                      64 bits
    S: handshake flags (FIXED_NEWSTYLE | NO_ZEROES)      16 bits
    C: client flags    (C_FIXED_NEWSTYLE | C_NO_ZEROES)  32 bits

    then, repeated (option haggling):

    C: +--------------+-----------+-----------+---------------+
       | IHAVEOPT  64 | option 32 | length 32 | data (length) |
       +--------------+-----------+-----------+---------------+
    S: +---------------------+-----------+---------------+-----------+---------------+
       | 0x3e889045565a9  64 | option 32 | reply type 32 | length 32 | data (length) |
       +---------------------+-----------+---------------+-----------+---------------+

    NBD_OPT_INFO / NBD_OPT_GO data:
       name length 32 | name | number of info requests 16 | info type 16 x n
    replies: NBD_REP_INFO (NBD_INFO_EXPORT: type 16, size 64, transmission flags 16;
             NBD_INFO_NAME: type 16, name; NBD_INFO_DESCRIPTION: type 16, text;
             NBD_INFO_BLOCK_SIZE: type 16, minimum 32, preferred 32, maximum 32),
             then NBD_REP_ACK (NBD_OPT_GO: transmission starts) or an NBD_REP_ERR_*.
    NBD_OPT_EXPORT_NAME data: the name; the reply is not an option reply but
       size 64 | transmission flags 16 | 124 zero bytes (none if NO_ZEROES was agreed),
       and transmission starts; an unknown name closes the connection.

Transmission::

    request (28 bytes, then the payload of an NBD_CMD_WRITE):
    +-----------+----------+---------+-----------+-----------+-----------+
    | magic  32 | flags 16 | type 16 | cookie 64 | offset 64 | length 32 |
    | 25609513  |          |         |           |           |           |
    +-----------+----------+---------+-----------+-----------+-----------+

    simple reply (16 bytes, then the data of a successful NBD_CMD_READ):
    +-----------+-----------+-----------+
    | magic  32 | error  32 | cookie 64 |
    | 67446698  |           |           |
    +-----------+-----------+-----------+

    structured reply chunk (20 bytes, then length bytes of payload):
    +-----------+----------+---------+-----------+-----------+
    | magic  32 | flags 16 | type 16 | cookie 64 | length 32 |
    | 668e33ef  | (DONE)   |         |           |           |
    +-----------+----------+---------+-----------+-----------+
    NBD_REPLY_TYPE_OFFSET_DATA payload: offset 64 | data
    NBD_REPLY_TYPE_OFFSET_HOLE payload: offset 64 | hole size 32
    NBD_REPLY_TYPE_ERROR payload:       error 32 | message length 16 | message

Error numbers are the protocol's own (NBD_EINVAL etc.), which happen to be
Linux's errno values.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

# ----------------------------------------------------------------------
# handshake

NBDMAGIC = 0x4E42444D41474943  # "NBDMAGIC", INIT_PASSWD
IHAVEOPT = 0x49484156454F5054  # "IHAVEOPT"
NBD_REP_MAGIC = 0x3E889045565A9  # option replies

# handshake flags (server)
NBD_FLAG_FIXED_NEWSTYLE = 1 << 0
NBD_FLAG_NO_ZEROES = 1 << 1
# client flags
NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0
NBD_FLAG_C_NO_ZEROES = 1 << 1

# options
NBD_OPT_EXPORT_NAME = 1
NBD_OPT_ABORT = 2
NBD_OPT_LIST = 3
NBD_OPT_STARTTLS = 5
NBD_OPT_INFO = 6
NBD_OPT_GO = 7
NBD_OPT_STRUCTURED_REPLY = 8
NBD_OPT_LIST_META_CONTEXT = 9
NBD_OPT_SET_META_CONTEXT = 10
NBD_OPT_EXTENDED_HEADERS = 11

# option reply types
NBD_REP_ACK = 1
NBD_REP_SERVER = 2
NBD_REP_INFO = 3
NBD_REP_META_CONTEXT = 4
NBD_REP_FLAG_ERROR = 1 << 31
NBD_REP_ERR_UNSUP = NBD_REP_FLAG_ERROR | 1
NBD_REP_ERR_POLICY = NBD_REP_FLAG_ERROR | 2
NBD_REP_ERR_INVALID = NBD_REP_FLAG_ERROR | 3
NBD_REP_ERR_PLATFORM = NBD_REP_FLAG_ERROR | 4
NBD_REP_ERR_TLS_REQD = NBD_REP_FLAG_ERROR | 5
NBD_REP_ERR_UNKNOWN = NBD_REP_FLAG_ERROR | 6
NBD_REP_ERR_SHUTDOWN = NBD_REP_FLAG_ERROR | 7
NBD_REP_ERR_BLOCK_SIZE_REQD = NBD_REP_FLAG_ERROR | 8
NBD_REP_ERR_TOO_BIG = NBD_REP_FLAG_ERROR | 9

# NBD_REP_INFO information types
NBD_INFO_EXPORT = 0
NBD_INFO_NAME = 1
NBD_INFO_DESCRIPTION = 2
NBD_INFO_BLOCK_SIZE = 3

# transmission flags
NBD_FLAG_HAS_FLAGS = 1 << 0
NBD_FLAG_READ_ONLY = 1 << 1
NBD_FLAG_SEND_FLUSH = 1 << 2
NBD_FLAG_SEND_FUA = 1 << 3
NBD_FLAG_ROTATIONAL = 1 << 4
NBD_FLAG_SEND_TRIM = 1 << 5
NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6
NBD_FLAG_SEND_DF = 1 << 7
NBD_FLAG_CAN_MULTI_CONN = 1 << 8
NBD_FLAG_SEND_CACHE = 1 << 10
NBD_FLAG_SEND_FAST_ZERO = 1 << 11

# ----------------------------------------------------------------------
# transmission

NBD_REQUEST_MAGIC = 0x25609513
NBD_SIMPLE_REPLY_MAGIC = 0x67446698
NBD_STRUCTURED_REPLY_MAGIC = 0x668E33EF

# commands
NBD_CMD_READ = 0
NBD_CMD_WRITE = 1
NBD_CMD_DISC = 2
NBD_CMD_FLUSH = 3
NBD_CMD_TRIM = 4
NBD_CMD_CACHE = 5
NBD_CMD_WRITE_ZEROES = 6
NBD_CMD_BLOCK_STATUS = 7

# command flags
NBD_CMD_FLAG_FUA = 1 << 0
NBD_CMD_FLAG_NO_HOLE = 1 << 1
NBD_CMD_FLAG_DF = 1 << 2
NBD_CMD_FLAG_REQ_ONE = 1 << 3
NBD_CMD_FLAG_FAST_ZERO = 1 << 4

# structured reply flags and chunk types
NBD_REPLY_FLAG_DONE = 1 << 0
NBD_REPLY_TYPE_NONE = 0
NBD_REPLY_TYPE_OFFSET_DATA = 1
NBD_REPLY_TYPE_OFFSET_HOLE = 2
NBD_REPLY_TYPE_BLOCK_STATUS = 5
NBD_REPLY_TYPE_ERROR = (1 << 15) + 1
NBD_REPLY_TYPE_ERROR_OFFSET = (1 << 15) + 2

# error values
NBD_EPERM = 1
NBD_EIO = 5
NBD_ENOMEM = 12
NBD_EINVAL = 22
NBD_ENOSPC = 28
NBD_EOVERFLOW = 75
NBD_ENOTSUP = 95
NBD_ESHUTDOWN = 108

#: the largest export name, description or error message the protocol allows (bytes)
NBD_MAX_STRING = 4096

# ----------------------------------------------------------------------
# layouts

HANDSHAKE = struct.Struct(">QQH")  # NBDMAGIC, IHAVEOPT, handshake flags
CLIENT_FLAGS = struct.Struct(">I")
OPTION_HEADER = struct.Struct(">QII")  # IHAVEOPT, option, length
OPTION_REPLY = struct.Struct(">QIII")  # NBD_REP_MAGIC, option, reply type, length
EXPORT_NAME_REPLY = struct.Struct(">QH")  # size, transmission flags (then 124 zero bytes)
EXPORT_NAME_PADDING = 124
INFO_EXPORT = struct.Struct(">HQH")  # NBD_INFO_EXPORT, size, transmission flags
INFO_BLOCK_SIZE = struct.Struct(">HIII")  # NBD_INFO_BLOCK_SIZE, minimum, preferred, maximum
U16 = struct.Struct(">H")
U32 = struct.Struct(">I")

REQUEST = struct.Struct(">IHHQQI")  # magic, flags, type, cookie, offset, length
SIMPLE_REPLY = struct.Struct(">IIQ")  # magic, error, cookie
STRUCTURED_REPLY = struct.Struct(">IHHQI")  # magic, flags, type, cookie, payload length
OFFSET_DATA = struct.Struct(">Q")  # offset (then the data)
OFFSET_HOLE = struct.Struct(">QI")  # offset, hole size
ERROR_CHUNK = struct.Struct(">IH")  # error, message length (then the message)

COMMAND_NAMES = {
    NBD_CMD_READ: "NBD_CMD_READ",
    NBD_CMD_WRITE: "NBD_CMD_WRITE",
    NBD_CMD_DISC: "NBD_CMD_DISC",
    NBD_CMD_FLUSH: "NBD_CMD_FLUSH",
    NBD_CMD_TRIM: "NBD_CMD_TRIM",
    NBD_CMD_CACHE: "NBD_CMD_CACHE",
    NBD_CMD_WRITE_ZEROES: "NBD_CMD_WRITE_ZEROES",
    NBD_CMD_BLOCK_STATUS: "NBD_CMD_BLOCK_STATUS",
}

OPTION_NAMES = {
    NBD_OPT_EXPORT_NAME: "NBD_OPT_EXPORT_NAME",
    NBD_OPT_ABORT: "NBD_OPT_ABORT",
    NBD_OPT_LIST: "NBD_OPT_LIST",
    NBD_OPT_STARTTLS: "NBD_OPT_STARTTLS",
    NBD_OPT_INFO: "NBD_OPT_INFO",
    NBD_OPT_GO: "NBD_OPT_GO",
    NBD_OPT_STRUCTURED_REPLY: "NBD_OPT_STRUCTURED_REPLY",
    NBD_OPT_LIST_META_CONTEXT: "NBD_OPT_LIST_META_CONTEXT",
    NBD_OPT_SET_META_CONTEXT: "NBD_OPT_SET_META_CONTEXT",
    NBD_OPT_EXTENDED_HEADERS: "NBD_OPT_EXTENDED_HEADERS",
}


class Request(NamedTuple):
    """One decoded request header (the payload of a write follows it on the wire)."""

    flags: int
    type: int
    cookie: int
    offset: int
    length: int


def option_reply(option: int, reply_type: int, data: bytes = b"") -> bytes:
    """An option reply: header and data."""
    return OPTION_REPLY.pack(NBD_REP_MAGIC, option, reply_type, len(data)) + data


def simple_reply(cookie: int, error: int = 0) -> bytes:
    """A simple reply header (the data of a successful read follows it)."""
    return SIMPLE_REPLY.pack(NBD_SIMPLE_REPLY_MAGIC, error, cookie)


def chunk_header(cookie: int, chunk_type: int, length: int, done: bool) -> bytes:
    """A structured reply chunk header for ``length`` bytes of payload."""
    flags = NBD_REPLY_FLAG_DONE if done else 0
    return STRUCTURED_REPLY.pack(NBD_STRUCTURED_REPLY_MAGIC, flags, chunk_type, cookie, length)


def error_chunk(cookie: int, error: int, message: str) -> bytes:
    """A final NBD_REPLY_TYPE_ERROR chunk with a human-readable message (cut to NBD_MAX_STRING)."""
    text = message.encode("utf-8", "replace")[:NBD_MAX_STRING]
    payload = ERROR_CHUNK.pack(error, len(text)) + text
    return chunk_header(cookie, NBD_REPLY_TYPE_ERROR, len(payload), True) + payload
