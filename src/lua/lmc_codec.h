/*
 * lmc_codec: memcached's binary protocol codec (mc_proto) for Lua, with no
 * I/O, so that a Lua driver (the OpenResty cosocket one) can frame requests
 * and parse responses itself.
 *
 * lmc_codec_open sets field `codec` in the table at the top of the stack
 * (and registers the "memcached.reader" metatable). The stack is left as it
 * was. The codec table holds:
 *
 *   reader([max_body]) -> r     incremental response reader; max_body
 *                               (bytes, default 64 MiB) caps a declared body
 *   r:feed(bytes)               appends bytes (ignored once r has failed)
 *   r:get([t]) -> t | false | nil, err, kind
 *                               one response as a table {opcode, status,
 *                               opaque, cas, key, value, extras, flags,
 *                               datatype, shape_ok} (key/value/extras are
 *                               strings, "" when absent; shape_ok is false
 *                               when the reply is framed wrongly for its
 *                               opcode), filled into t when given
 *                               (to reuse one table); false when more bytes
 *                               are needed; nil, err, kind on an error,
 *                               which is sticky until r:reset(): kind
 *                               "server_error" when the server sent a text
 *                               error line where a reply should start (err
 *                               is the line: memcached at its connection
 *                               limit), else "protocol"
 *   r:pending() -> n            bytes fed but not yet taken out by get
 *   r:reset()                   forgets bytes and error
 *
 *   request(op, opaque, cas, extras, key, value) -> bytes
 *   get(op, opaque, key)                       GET GETQ GETK GETKQ
 *   store(op, opaque, cas, key, flags, exptime, value)
 *                                              SET ADD REPLACE (+Q)
 *   concat(op, opaque, cas, key, value)        APPEND PREPEND (+Q)
 *   delete(op, opaque, cas, key)               DELETE DELETEQ
 *   arith(op, opaque, key, delta, initial, exptime)
 *                                              INCREMENT DECREMENT (+Q)
 *   touch(op, opaque, key, exptime)            TOUCH GAT GATQ GATK GATKQ
 *   flush(op, opaque [, delay])                FLUSH FLUSHQ
 *   simple(op, opaque)                         NOOP VERSION QUIT QUITQ
 *   stat(opaque [, group])
 *   status_str(status) -> short name
 *   random32() -> n                            from the generator that
 *                                              seeds connections' opaques
 *   op.NAME, status.NAME                       numeric codes
 *   ARITH_NO_CREATE, HEADER_LEN, DEFAULT_MAX_BODY
 *
 * cas, flags, exptime, delay, delta and initial may be nil (0). An opcode
 * outside a helper's list, a key longer than 65535 bytes or a body too large
 * for one frame raise an argument error.
 */
#ifndef LMC_CODEC_H
#define LMC_CODEC_H

#include <lua.h>

void lmc_codec_open(lua_State *L);

#endif
