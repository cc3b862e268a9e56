-- The read-only views every selection query may read, over the rounds in the pool (this round; for the
-- cumulative strategy this round and all earlier ones):
--   samples: the samples/ shards as written by generate
--   scores:  the scores/ shards as written by score, plus the round (taken from the shard's folder)
--   scored:  one row per sample with its reward and rank_key, the column named by select.rank_by
-- Python creates raw_samples and raw_scores (read_parquet over the shard files) before this script.

create or replace temp view samples as
select * from raw_samples;

create or replace temp view scores as
select
    * exclude (filename),
    cast(regexp_extract(filename, 'round-([0-9]+)[/\\]scores[/\\]shard-[^/\\]*$', 1) as integer) as round
from raw_scores;

create or replace temp view scored as
with sample_rows as (
    select prompt_id, sample_idx, prompt, completion, n_tokens, truncated, source, round
    from samples
),

score_rows as (
    -- struct_extract on the row keeps projection pushdown: only the named column is read
    select prompt_id, sample_idx, round, reward, struct_extract(scores, getvariable('rank_by')) as rank_key
    from scores
),

final as (
    select sample_rows.*, score_rows.reward, cast(score_rows.rank_key as double) as rank_key
    from sample_rows
    join score_rows using (prompt_id, sample_idx, round)
)

select * from final;
