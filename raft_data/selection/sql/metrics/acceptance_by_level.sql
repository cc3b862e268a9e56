-- Acceptance by level: of the round's scored samples of each difficulty level, how many the selection kept.
-- Reads the view scored and the registered table selected_rows (the selection about to be published).
with round_samples as (
    select level, prompt_id, sample_idx from scored where round = $r and level is not null
),

kept as (
    select prompt_id, sample_idx from selected_rows where round = $r
),

final as (
    select
        round_samples.level,
        count(*) as n_samples,
        count(kept.prompt_id) as n_selected
    from round_samples
    left join kept using (prompt_id, sample_idx)
    group by round_samples.level
    order by round_samples.level
)

select * from final
