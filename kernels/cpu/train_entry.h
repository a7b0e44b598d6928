// The entry points training.cc exports, per ISA (no include guard, see train_simd.h).
inline int BiasGeluFwd(const pangu_args::Args& a) { return bias_act_fwd<Act::kGelu>(a); }
inline int BiasGeluBwd(const pangu_args::Args& a) { return bias_act_bwd<Act::kGelu>(a); }
inline int BiasFastGeluFwd(const pangu_args::Args& a) { return bias_act_fwd<Act::kFastGelu>(a); }
inline int BiasFastGeluBwd(const pangu_args::Args& a) { return bias_act_bwd<Act::kFastGelu>(a); }
inline int AddLayerNormFwd(const pangu_args::Args& a) { return add_layer_norm_fwd(a); }
inline int AddLayerNormBwd(const pangu_args::Args& a) { return add_layer_norm_bwd(a); }
inline int FlashAttentionFwd(const pangu_args::Args& a) { return flash_attention_fwd(a); }
inline int FlashAttentionBwd(const pangu_args::Args& a) { return flash_attention_bwd(a); }
inline int TiedHeadCEFwd(const pangu_args::Args& a) { return tied_head_ce_fwd(a); }
inline int TiedHeadCELoss(const pangu_args::Args& a) { return tied_head_ce_loss(a); }
inline int TiedHeadCEBwd(const pangu_args::Args& a) { return tied_head_ce_bwd(a); }
inline int FusedAdamW(const pangu_args::Args& a) { return fused_adamw(a); }
inline int GradSquaredNorm(const pangu_args::Args& a) { return grad_squared_norm(a); }
