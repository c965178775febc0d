/*
 * lmc_decode: msgpack -> Lua values, behind a pre-scan that bounds what
 * msgpack-c may allocate and what the Lua values may cost (see
 * lmc_value.c for the whole).
 */
#include "lmc_value_int.h"

/* msgpack-c's unpacker holds at most MSGPACK_EMBED_STACK_SIZE open
 * containers; LMC_MAX_DEPTH must fit in it, or values we encode could not
 * be read back. */
#if MSGPACK_EMBED_STACK_SIZE < LMC_MAX_DEPTH
#error "msgpack-c's unpacker cannot nest LMC_MAX_DEPTH containers"
#endif

enum {
    DEC_OK,
    DEC_TRUNC,
    DEC_BAD,
    DEC_TRAIL,
    DEC_DEEP,
    DEC_EXT,
    DEC_KEY,
    DEC_BIG,
    DEC_STACK,
    DEC_NOMEM,
    DEC_BUDGET
};

static uint16_t load_be16(const unsigned char *p)
{
    return (uint16_t)((unsigned)p[0] << 8 | p[1]);
}

static uint32_t load_be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* The guard's verdicts: SCAN_STOP means "let msgpack-c say what is wrong".
 * SCAN_MORE never leaves scan(): its steps say "go on" with it. */
enum { SCAN_DONE, SCAN_STOP, SCAN_DEEP, SCAN_HUGE, SCAN_BUDGET, SCAN_MORE };

/* What an element's type byte says about the bytes that follow it. */
typedef struct scan_hdr {
    size_t skip;     /* bytes to step over (a scalar's payload, ext's type) */
    size_t lenbytes; /* bytes of the big-endian length that comes next */
    size_t count;    /* elements of a container */
    int kind;        /* 0 scalar, 1 array, 2 map */
} scan_hdr;

/* The walk's open containers and what the value has cost so far. */
typedef struct scan_state {
    size_t open[LMC_MAX_DEPTH]; /* elements not yet started, per container */
    size_t pending;             /* their sum */
    size_t budget;
    size_t *cost;
    int top;
} scan_state;

/* Fills h from type byte b; SCAN_STOP for 0xc1, which msgpack never uses. */
static int scan_type(unsigned b, scan_hdr *h)
{
    if (b <= 0x7f || b >= 0xe0) {
        /* fixint */
    } else if (b <= 0x8f) {
        h->kind = 2;
        h->count = b & 0x0f;
    } else if (b <= 0x9f) {
        h->kind = 1;
        h->count = b & 0x0f;
    } else if (b <= 0xbf) {
        h->skip = b & 0x1f;
    } else {
        switch (b) {
        case 0xc0: case 0xc2: case 0xc3: break;
        case 0xc4: case 0xd9: h->lenbytes = 1; break; /* bin 8, str 8 */
        case 0xc5: case 0xda: h->lenbytes = 2; break;
        case 0xc6: case 0xdb: h->lenbytes = 4; break;
        case 0xc7: h->lenbytes = 1; h->skip = 1; break; /* ext: + type byte */
        case 0xc8: h->lenbytes = 2; h->skip = 1; break;
        case 0xc9: h->lenbytes = 4; h->skip = 1; break;
        case 0xcc: case 0xd0: h->skip = 1; break;
        case 0xcd: case 0xd1: h->skip = 2; break;
        case 0xca: case 0xce: case 0xd2: h->skip = 4; break;
        case 0xcb: case 0xcf: case 0xd3: h->skip = 8; break;
        case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8: /* fixext */
            h->skip = 1 + ((size_t)1 << (b - 0xd4));
            break;
        case 0xdc: h->kind = 1; h->lenbytes = 2; break;
        case 0xdd: h->kind = 1; h->lenbytes = 4; break;
        case 0xde: h->kind = 2; h->lenbytes = 2; break;
        case 0xdf: h->kind = 2; h->lenbytes = 4; break;
        default: return SCAN_STOP; /* 0xc1, never used */
        }
    }
    return SCAN_MORE;
}

/* A container header whose count is known: refused unless the bytes left
 * (past those its enclosing containers still expect) can hold it. */
static int scan_open(scan_state *s, int kind, size_t count, size_t left)
{
    if (s->top == LMC_MAX_DEPTH)
        return SCAN_DEEP;
    if (kind == 2) {
        if (count > left) /* also keeps 2 * count from wrapping */
            return SCAN_HUGE;
        count *= 2;
    }
    if (s->pending > left || count > left - s->pending)
        return SCAN_HUGE;
    /* count is now within the bytes left */
    *s->cost += LMC_COST_TABLE + count * (kind == 2 ? LMC_COST_ENTRY / 2 : LMC_COST_SLOT);
    if (*s->cost > s->budget)
        return SCAN_BUDGET;
    if (count > 0) {
        s->open[s->top++] = count;
        s->pending += count;
    }
    return SCAN_MORE;
}

/* A scalar of type byte b whose payload (h->skip bytes) must fit in the
 * bytes left; strings and bins add to the cost. */
static int scan_scalar(scan_state *s, unsigned b, const scan_hdr *h, size_t left)
{
    if (h->skip > left)
        return SCAN_STOP;
    /* Lua interns short strings: the 257 of at most one byte cost
     * nothing per copy. */
    if (h->skip > 1 && (h->lenbytes || (b >= 0xa0 && b <= 0xbf)) && b != 0xc7 &&
        b != 0xc8 && b != 0xc9) {
        *s->cost += LMC_COST_STR + h->skip;
        if (*s->cost > s->budget)
            return SCAN_BUDGET;
    }
    return SCAN_MORE;
}

/* On to the next element, past the containers the last one completed:
 * SCAN_DONE once the outermost value is complete. */
static int scan_next(scan_state *s)
{
    while (s->top > 0 && s->open[s->top - 1] == 0)
        s->top--;
    if (s->top == 0)
        return SCAN_DONE;
    s->open[s->top - 1]--;
    s->pending--;
    return SCAN_MORE;
}

/*
 * Untrusted bytes reach msgpack_unpack() only after this walk over their
 * headers, because of two things msgpack-c 4.0 does:
 * - on a container header it takes count * sizeof(msgpack_object) from the
 *   zone at once, before reading any element: 5 bytes declaring 16M
 *   elements cost a 512 MB malloc, 4G elements a 96 GB one;
 * - past its 32-container stack it returns MSGPACK_UNPACK_NOMEM_ERROR, the
 *   same code as a failed malloc.
 * Every element takes at least one byte, so a container declaring more
 * elements than the bytes left (less one for each element its enclosing
 * containers still expect) cannot be complete: it is refused as truncated
 * before anything is allocated, which bounds the zone by 24 bytes per input
 * byte. The walk reads no values. Where the bytes are malformed or end
 * inside a scalar it stops and leaves the verdict to msgpack-c, which stops
 * at the same byte, after the same, already checked, headers.
 *
 * It also adds up what the value will cost in Lua memory (LMC_COST_*) and
 * refuses it (SCAN_BUDGET, *cost says how far it got) once that passes
 * lmc_decode_budget(n): one byte of nested empty arrays would otherwise
 * become a 56-byte table plus a 16-byte slot.
 */
static int scan(const unsigned char *p, size_t n, size_t *cost)
{
    const unsigned char *end = p + n;
    scan_state s;

    s.pending = 0;
    s.budget = lmc_decode_budget(n);
    s.cost = cost;
    s.top = 0;
    /* Each addition is at most LMC_COST_TABLE + LMC_COST_ENTRY * 2^32 or
     * LMC_COST_STR + the bytes left, checked against the budget at once,
     * so *cost cannot wrap. */
    *cost = 0;

    for (;;) {
        scan_hdr h = {0, 0, 0, 0};
        size_t left;
        unsigned b;
        int r;

        if (p >= end)
            return SCAN_STOP;
        b = *p++;
        left = (size_t)(end - p);
        if ((r = scan_type(b, &h)) != SCAN_MORE)
            return r;
        if (h.lenbytes) {
            size_t len;
            if (left < h.lenbytes)
                return SCAN_STOP;
            len = h.lenbytes == 1 ? p[0] : h.lenbytes == 2 ? load_be16(p) : load_be32(p);
            p += h.lenbytes;
            left -= h.lenbytes;
            if (h.kind)
                h.count = len;
            else
                h.skip += len;
        }
        if (h.kind)
            r = scan_open(&s, h.kind, h.count, left);
        else if ((r = scan_scalar(&s, b, &h, left)) == SCAN_MORE)
            p += h.skip; /* checked against the bytes left */
        if (r != SCAN_MORE || (r = scan_next(&s)) != SCAN_MORE)
            return r;
    }
}

static int push_object(lua_State *L, lmc_vctx *c, const msgpack_object *o);

static int push_array(lua_State *L, lmc_vctx *c, const msgpack_object_array *a)
{
    int i, n, holes = 0, r;

    if (a->size > INT_MAX)
        return DEC_BIG;
    n = (int)a->size;
    lua_createtable(L, n, 0);
    for (i = 0; i < n; i++) {
        if (a->ptr[i].type == MSGPACK_OBJECT_NIL) {
            holes = 1;
            continue;
        }
        if ((r = push_object(L, c, &a->ptr[i])) != DEC_OK)
            return r;
        lua_rawseti(L, -2, i + 1);
    }
    /* Without the mark these would come back as a map (empty, or keys that
     * are not 1..n) when encoded again; without the length, an array ending
     * in nil would lose its trailing nils. */
    if (n == 0 || holes) {
        luaL_getmetatable(L, LMC_ARRAY_MT);
        lua_setmetatable(L, -2);
    }
    if (holes && lmc_v_push_lengths(L)) {
        lua_pushvalue(L, -2);
        lmc_pushint(L, n);
        lua_rawset(L, -3);
    }
    if (holes)
        lua_pop(L, 1);
    return DEC_OK;
}

static int push_map(lua_State *L, lmc_vctx *c, const msgpack_object_map *m)
{
    uint32_t i;
    int r;

    if (m->size > INT_MAX)
        return DEC_BIG;
    lua_createtable(L, 0, (int)m->size);
    for (i = 0; i < m->size; i++) {
        const msgpack_object *k = &m->ptr[i].key;
        /* lua_rawset() would raise on these. */
        if (k->type == MSGPACK_OBJECT_NIL ||
            ((k->type == MSGPACK_OBJECT_FLOAT64 || k->type == MSGPACK_OBJECT_FLOAT32) &&
             isnan(k->via.f64)))
            return DEC_KEY;
        if ((r = push_object(L, c, k)) != DEC_OK ||
            (r = push_object(L, c, &m->ptr[i].val)) != DEC_OK)
            return r;
        lua_rawset(L, -3);
    }
    return DEC_OK;
}

static int push_object(lua_State *L, lmc_vctx *c, const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        lua_pushnil(L);
        return DEC_OK;
    case MSGPACK_OBJECT_BOOLEAN:
        lua_pushboolean(L, o->via.boolean);
        return DEC_OK;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        if (o->via.u64 > (uint64_t)INT64_MAX)
            lua_pushnumber(L, (lua_Number)o->via.u64); /* keeps the magnitude */
        else
            lmc_pushint(L, (int64_t)o->via.u64);
        return DEC_OK;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        lmc_pushint(L, o->via.i64);
        return DEC_OK;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        lua_pushnumber(L, (lua_Number)o->via.f64);
        return DEC_OK;
    case MSGPACK_OBJECT_STR:
        lua_pushlstring(L, o->via.str.ptr, o->via.str.size);
        return DEC_OK;
    case MSGPACK_OBJECT_BIN:
        lua_pushlstring(L, o->via.bin.ptr, o->via.bin.size);
        return DEC_OK;
    case MSGPACK_OBJECT_ARRAY:
        return push_array(L, c, &o->via.array);
    case MSGPACK_OBJECT_MAP:
        return push_map(L, c, &o->via.map);
    default:
        c->ext = o->type == MSGPACK_OBJECT_EXT ? o->via.ext.type : -1;
        return DEC_EXT;
    }
}

typedef struct tmp_zone {
    msgpack_zone zone;
    int live;
} tmp_zone;

int lmc_v_tmp_zone_gc(lua_State *L)
{
    tmp_zone *t = lua_touserdata(L, 1);
    if (t && t->live) {
        t->live = 0;
        msgpack_zone_destroy(&t->zone);
    }
    return 0;
}

int lmc_v_tmp_buf_gc(lua_State *L)
{
    mc_buf *b = lua_touserdata(L, 1);
    if (b)
        mc_buf_free(b);
    return 0;
}

/* Pushes a userdata of size n whose metatable (name, with gc as __gc) frees
 * what it holds; zeroed before the metatable is set, so a failure later
 * leaks nothing. */
void *lmc_v_push_owned(lua_State *L, size_t n, const char *name, lua_CFunction gc)
{
    void *p = lua_newuserdata(L, n);
    memset(p, 0, n);
    luaL_getmetatable(L, name);
    if (!lua_istable(L, -1)) {
        lua_pop(L, 1);
        luaL_newmetatable(L, name);
        lua_pushcfunction(L, gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    return p;
}

/* The zone msgpack-c unpacks into: the context's, unless a decode still
 * uses it, else a fresh one owned by a userdata pushed at the stack's top
 * (*tmp). NULL when a fresh one cannot be had. */
static msgpack_zone *borrow_zone(lua_State *L, lmc_vctx *c, tmp_zone **tmp)
{
    if (!c->zone_lent) {
        c->zone_lent = 1;
        /* Cleared before as well as after: a Lua error while pushing
         * unwinds past the clear in return_zone(). */
        msgpack_zone_clear(&c->zone);
        return &c->zone;
    }
    /* Called from a finalizer while a decode that uses c->zone is still
     * pushing its value (or one was unwound by an error). */
    *tmp = lmc_v_push_owned(L, sizeof **tmp, LMC_TMPZONE_MT, lmc_v_tmp_zone_gc);
    if (!msgpack_zone_init(&(*tmp)->zone, MSGPACK_ZONE_CHUNK_SIZE))
        return NULL;
    (*tmp)->live = 1;
    return &(*tmp)->zone;
}

/* Gives back what borrow_zone() lent; on success the value pushed above a
 * temporary zone's userdata (at top + 1) takes its place. */
static void return_zone(lua_State *L, lmc_vctx *c, msgpack_zone *zone, tmp_zone *tmp,
                        int e, int top)
{
    if (tmp) {
        tmp->live = 0;
        msgpack_zone_destroy(&tmp->zone);
        if (e == DEC_OK)
            lua_remove(L, top + 1);
    } else {
        /* Keeps only the first chunk: a big value's memory goes back
         * now. */
        msgpack_zone_clear(zone);
        c->zone_lent = 0;
    }
}

/* Unpacks the n bytes at p into zone and pushes the Lua value. */
static int unpack_push(lua_State *L, lmc_vctx *c, const char *p, size_t n, msgpack_zone *zone)
{
    msgpack_object obj;
    size_t off = 0;

    switch (msgpack_unpack(p, n, &off, zone, &obj)) {
    case MSGPACK_UNPACK_SUCCESS:
        return push_object(L, c, &obj);
    case MSGPACK_UNPACK_EXTRA_BYTES:
        return DEC_TRAIL;
    case MSGPACK_UNPACK_CONTINUE:
        return DEC_TRUNC;
    case MSGPACK_UNPACK_NOMEM_ERROR: /* the scan took care of depth */
        return DEC_NOMEM;
    default:
        return DEC_BAD;
    }
}

/* Decodes bytes the scan let through (or left to msgpack-c to judge). */
static int decode_scanned(lua_State *L, lmc_vctx *c, const char *p, size_t n, int top)
{
    msgpack_zone *zone;
    tmp_zone *tmp = NULL;
    int e;

    /* Each level holds a table and a key while its value is pushed, the
     * innermost array also the length table, a key and a value. */
    if (!lua_checkstack(L, 2 * LMC_MAX_DEPTH + 8))
        return DEC_STACK;
    if (!(zone = borrow_zone(L, c, &tmp)))
        return DEC_NOMEM;
    e = unpack_push(L, c, p, n, zone);
    return_zone(L, c, zone, tmp, e, top);
    return e;
}

/* Writes the message for error e into err; n and cost describe a value
 * over the budget. */
static void decode_message(const lmc_vctx *c, int e, size_t n, size_t cost, char *err,
                           size_t errlen)
{
    switch (e) {
    case DEC_TRUNC:
        snprintf(err, errlen, "truncated msgpack value");
        break;
    case DEC_TRAIL:
        snprintf(err, errlen, "trailing bytes after msgpack value");
        break;
    case DEC_DEEP:
        snprintf(err, errlen, "msgpack value nested deeper than %d levels", LMC_MAX_DEPTH);
        break;
    case DEC_EXT:
        snprintf(err, errlen, "msgpack ext type %d is not supported", c->ext);
        break;
    case DEC_KEY:
        snprintf(err, errlen, "msgpack map key cannot be nil/NaN");
        break;
    case DEC_BIG:
        snprintf(err, errlen, "msgpack container too large");
        break;
    case DEC_STACK:
        snprintf(err, errlen, "Lua stack overflow while decoding msgpack value");
        break;
    case DEC_NOMEM:
        snprintf(err, errlen, "out of memory while decoding msgpack value");
        break;
    case DEC_BUDGET:
        snprintf(err, errlen,
                 "msgpack value over the decoded size budget: %zu bytes would take more "
                 "than %zu bytes of Lua memory (limit %dx + %zu KiB)",
                 n, cost, LMC_BUDGET_RATIO, (size_t)LMC_BUDGET_BASE / 1024);
        break;
    default:
        snprintf(err, errlen, "malformed msgpack value");
        break;
    }
}

int lmc_value_decode(lua_State *L, lmc_vctx *c, const char *p, size_t n,
                     char *err, size_t errlen)
{
    size_t cost = 0;
    int top = lua_gettop(L);
    int e;

    switch (n == 0 ? SCAN_STOP : scan((const unsigned char *)p, n, &cost)) { /* p may be NULL */
    case SCAN_DEEP:
        e = DEC_DEEP;
        break;
    case SCAN_HUGE:
        e = DEC_TRUNC;
        break;
    case SCAN_BUDGET:
        e = DEC_BUDGET;
        break;
    default:
        e = decode_scanned(L, c, p, n, top);
        break;
    }
    if (e == DEC_OK)
        return 0;

    lua_settop(L, top);
    decode_message(c, e, n, cost, err, errlen);
    return -1;
}
