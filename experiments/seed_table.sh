#!/usr/bin/env bash
# The seed document's "What Different Heads Learn": the default causal LM and a masked-LM encoder, both
# on the grammar at the default budget, then the best head for each of the seed's five rows.
# The causal LM finds subject-verb, noun-adjective, coreference and prepositional heads; a head that
# attends to the adjacent token for 90% of queries (Voita et al.'s positional bar) forms in the encoder,
# whose attention sees both neighbours, as in the seed's "each token -> previous/next token".
source "$(dirname "$0")/_lib.sh"
causal_log=$(mktemp)
encoder_log=$(mktemp)
$BIN/mhaexp-train logger.tags=[seed_table] | tee "$causal_log"
$BIN/mhaexp-train model=encoder logger.tags=[seed_table] | tee "$encoder_log"
$BIN/python -m mhaexp.analysis.seed_table "$(run_dir_of "$causal_log")" "$(run_dir_of "$encoder_log")"
