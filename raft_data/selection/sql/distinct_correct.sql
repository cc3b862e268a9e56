-- distinct_correct: for checkable answers (ReST-EM's cap per prompt). For each prompt keep up to n ($n =
-- select.n) correct candidates (correct = 1) with distinct reasoning: completions count as the same when they
-- are equal after lower-casing, collapsing white space and writing every number as 0. Among equal ones the
-- highest rank_key, then the lowest sample_idx stays; the kept ones are ordered the same way.
-- Reads the view candidates.

with candidate_rows as (
    select * from candidates
),

correct_rows as (
    select
        *,
        regexp_replace(regexp_replace(lower(trim(completion)), '\s+', ' ', 'g'), '[0-9]+', '0', 'g') as path
    from candidate_rows
    where correct = 1
),

distinct_paths as (
    select *
    from correct_rows
    qualify row_number() over (partition by round, prompt_id, path order by rank_key desc, sample_idx) = 1
),

top_n as (
    select *
    from distinct_paths
    qualify row_number() over (partition by prompt_id order by rank_key desc, sample_idx) <= $n
),

final as (
    select prompt_id, sample_idx, prompt, completion, reward, n_tokens, truncated, source, round
    from top_n
)

select * from final
order by prompt_id, sample_idx
