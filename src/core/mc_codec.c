#include "mc_codec.h"

/* The binary protocol: mc_proto's encoders and reader as they are. */
const mc_codec mc_codec_binary = {
    "binary",      mc_enc_get,   mc_enc_store2, mc_enc_concat,
    mc_enc_delete, mc_enc_arith, mc_enc_touch,  mc_enc_flush,
    mc_enc_simple, mc_enc_stat,  mc_reader_get, mc_req_cut,
};
