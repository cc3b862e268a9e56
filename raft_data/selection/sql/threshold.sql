-- threshold: keep every candidate whose rank_key reaches $tau (select.tau), as ReST's improve step does.
-- A prompt may give several samples or none.
-- Reads the view candidates.

with candidate_rows as (
    select * from candidates
),

above as (
    select *
    from candidate_rows
    where rank_key >= $tau
),

final as (
    select prompt_id, sample_idx, prompt, completion, reward, n_tokens, truncated, source, round
    from above
)

select * from final
order by prompt_id, sample_idx
