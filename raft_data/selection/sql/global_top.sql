-- global_top: the RAFT paper's global ranking. Rank all candidates of the round together and keep the top
-- fraction $alpha (select.alpha; by default 1/K, as many rows as best-of-K keeps): ceil(alpha * candidates) rows.
-- Ties go to the lowest (prompt_id, sample_idx). A prompt may give several samples or none.
-- Reads the view candidates.

with candidate_rows as (
    select * from candidates
),

ranked as (
    select
        *,
        row_number() over (order by rank_key desc, prompt_id, sample_idx) as position,
        count(*) over () as n_candidates
    from candidate_rows
),

top_fraction as (
    select *
    from ranked
    -- rounded first, so that 0.28 * 25 = 7.000000000000001 keeps 7 rows, not 8
    where position <= ceil(round($alpha * n_candidates, 9))
),

final as (
    select prompt_id, sample_idx, prompt, completion, reward, n_tokens, truncated, source, round
    from top_fraction
)

select * from final
order by prompt_id, sample_idx
