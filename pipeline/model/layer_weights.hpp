// Which layers' weights a model holds from load on (load_causal_lm): all of them, or none until
// load_layer reads one (the embeddings, final norm and lm_head always).
#pragma once

namespace mixq {

enum class layer_weights { all, on_demand };

}  // namespace mixq
