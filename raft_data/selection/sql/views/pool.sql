-- The read-only views every selection query may read, over the rounds in the pool (this round; for the
-- cumulative strategy this round and all earlier ones):
--   samples: the samples/ shards as written by generate
--   scores:  the scores/ shards as written by score, plus the round (taken from the shard's folder)
--   scored:  one row per sample with its reward and rank_key, the column named by select.rank_by, and for
--            checkable answers the gold answer, level, correct (1 or 0) and the extracted answer (else null)
--   pass_rates: per prompt and round, samples, correct ones and their share (null without a correct column)
--   alignment: whether samples/ and scores/ shards pair up row for row (scored relies on it)
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
    select
        prompt_id, sample_idx, prompt, completion, n_tokens, truncated, source, round, answer, level,
        error as sample_error
    from raw_samples
),

score_rows as (
    -- struct_extract on the row keeps projection pushdown: only the named column is read
    select
        reward, struct_extract(raw_scores, getvariable('rank_by')) as rank_key, correct, extracted,
        error as score_error
    from raw_scores
),

final as (
    -- score writes one scores shard per samples shard, row for row, so the two line up by position: a
    -- positional join costs a scan where a hash join on (prompt_id, sample_idx) would cost a hash table of
    -- every sample. The view alignment below lets the data tests prove it before anything is published.
    select
        sample_rows.*,
        score_rows.reward,
        cast(score_rows.rank_key as double) as rank_key,
        score_rows.correct,
        score_rows.extracted,
        sample_rows.sample_error,
        score_rows.score_error
    from sample_rows
    positional join score_rows
)

-- a row the backend or the reward failed on is no sample: never ranked, counted, selected or trained on
select * exclude (sample_error, score_error) from final where sample_error is null and score_error is null;

create or replace temp view pass_rates as
with scored_rows as (
    select round, prompt_id, level, correct from scored
),

final as (
    select
        round,
        prompt_id,
        any_value(level) as level,
        count(*) as n_samples,
        count_if(correct = 1) as n_correct,
        avg(correct) as pass_rate
    from scored_rows
    group by round, prompt_id
)

select * from final;

create or replace temp view alignment as
with sample_keys as (
    select prompt_id, sample_idx from raw_samples
),

score_keys as (
    select prompt_id as score_prompt_id, sample_idx as score_sample_idx from raw_scores
),

final as (
    select
        count(*) as n_rows,
        count_if(prompt_id is distinct from score_prompt_id or sample_idx is distinct from score_sample_idx)
            as n_misaligned
    from sample_keys
    positional join score_keys
)

select * from final;
