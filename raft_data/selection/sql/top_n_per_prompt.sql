-- top_n_per_prompt: for each prompt keep the n candidates with the highest rank_key ($n = select.n);
-- ties go to the lowest sample_idx. n = 1 is best_per_prompt.
-- Reads the view candidates.

with candidate_rows as (
    select * from candidates
),

top_n as (
    select *
    from candidate_rows
    qualify row_number() over (partition by prompt_id order by rank_key desc, sample_idx) <= $n
),

final as (
    select prompt_id, sample_idx, prompt, completion, reward, n_tokens, truncated, source, round
    from top_n
)

select * from final
order by prompt_id, sample_idx
