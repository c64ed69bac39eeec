-- Usage validation, pricing snapshots and the quote (SPEC §0, §1, §3).
--
-- Money is exact: prices are numeric USD per unit, a cost is
-- ceil(sum(units * price) * 1e6) micro-USD, rounded up once per computation.

-- Internal, hot path: validate a usage (SPEC §0) and price it under a price
-- list in one pass: its token count, its cost in micros (rounded up once)
-- and the used units the price list does not price.
create or replace function costwarden._usage_price(
    p_usage jsonb, p_prices jsonb, p_arg text default 'p_usage',
    out tokens bigint, out amount_micros bigint, out unpriced text[]
)
language plpgsql stable
as $$
declare
    v_row record;
    v_tokens numeric := 0;
    v_total numeric := 0;
begin
    if p_usage is null or jsonb_typeof(p_usage) <> 'object' then
        perform costwarden._raise('CW004', format('%s must be a JSON object of usage units', p_arg));
    end if;
    unpriced := '{}';
    for v_row in
        select u.key, jsonb_typeof(u.value) as json_type, uu.integer_only, uu.is_token,
               case when jsonb_typeof(u.value) = 'number' then (u.value::text)::numeric end as n,
               (p_prices ->> u.key)::numeric as price
        from jsonb_each(p_usage) as u
        left join costwarden._usage_units as uu on uu.unit = u.key
    loop
        if v_row.integer_only is null then
            perform costwarden._raise('CW004', format('%s: unknown usage unit %L', p_arg, v_row.key));
        end if;
        if v_row.json_type <> 'number' then
            perform costwarden._raise('CW004', format('%s.%s must be a number', p_arg, v_row.key));
        end if;
        if v_row.n < 0 then
            perform costwarden._raise('CW004', format('%s.%s must not be negative', p_arg, v_row.key));
        end if;
        if v_row.n > 9223372036854775807 then
            perform costwarden._raise('CW004', format('%s.%s is out of range', p_arg, v_row.key));
        end if;
        if v_row.integer_only and v_row.n <> trunc(v_row.n) then
            perform costwarden._raise('CW004', format('%s.%s must be an integer', p_arg, v_row.key));
        end if;
        if v_row.is_token then
            v_tokens := v_tokens + v_row.n;
        end if;
        if v_row.price is null then
            if v_row.n <> 0 then
                unpriced := unpriced || v_row.key;
            end if;
        else
            v_total := v_total + v_row.n * v_row.price;
        end if;
    end loop;
    if v_tokens > 9223372036854775807 then
        perform costwarden._raise('CW004', format('%s: token count is out of range', p_arg));
    end if;
    v_total := ceil(v_total * 1000000);
    if v_total > 9223372036854775807 then
        perform costwarden._raise('CW004', format('%s: the cost of this usage is out of range', p_arg));
    end if;
    tokens := v_tokens::bigint;
    amount_micros := v_total::bigint;
    if cardinality(unpriced) > 1 then
        unpriced := array(select x from unnest(unpriced) as x order by x);
    end if;
end
$$;

-- Internal: validate a price list (USD per unit, exact, non-negative).
create or replace function costwarden._prices_check(p_prices jsonb)
returns jsonb
language plpgsql stable
as $$
declare
    v_key text;
    v_value jsonb;
begin
    if p_prices is null or jsonb_typeof(p_prices) <> 'object' or p_prices = '{}' then
        perform costwarden._raise('CW004', 'p_prices must be a non-empty JSON object of USD per usage unit');
    end if;
    for v_key, v_value in select * from jsonb_each(p_prices) loop
        if not exists (select from costwarden._usage_units where unit = v_key) then
            perform costwarden._raise('CW004', format('p_prices: unknown usage unit %L', v_key));
        end if;
        if jsonb_typeof(v_value) <> 'number' or (v_value::text)::numeric < 0 then
            perform costwarden._raise('CW004', format('p_prices.%s must be a non-negative number (USD per unit)', v_key));
        end if;
        if (v_value::text)::numeric > 1000000 then
            perform costwarden._raise('CW004', format('p_prices.%s is implausibly large (over 1,000,000 USD per unit)', v_key));
        end if;
    end loop;
    return p_prices;
end
$$;

create or replace function costwarden.fn_pricing_set(
    p_model text, p_prices jsonb, p_effective_from timestamptz default now()
)
returns bigint
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    v_id bigint;
    v_prices jsonb;
begin
    perform costwarden._shared_guard();
    perform costwarden._require_model(p_model);
    perform costwarden._prices_check(p_prices);
    if p_effective_from is null then
        perform costwarden._raise('CW004', 'p_effective_from is required');
    end if;
    -- snapshots are immutable: the same snapshot again (prices equal as numbers) is
    -- already loaded and returns its id, writing nothing; other prices are CW004
    select ps.snapshot_id, ps.prices into v_id, v_prices
    from costwarden._pricing_snapshots as ps
    where ps.model = p_model and ps.effective_from = p_effective_from;
    if found then
        if v_prices = p_prices then
            return v_id;
        end if;
        perform costwarden._raise('CW004', format(
            'p_effective_from: model %L already has a pricing snapshot effective from %s; snapshots are immutable',
            p_model, p_effective_from));
    end if;
    insert into costwarden._pricing_snapshots (model, prices, effective_from)
    values (p_model, p_prices, p_effective_from)
    returning snapshot_id into v_id;
    perform costwarden._audit(
        'pricing_set', null, jsonb_build_object('model', p_model, 'snapshot_id', v_id),
        null, jsonb_build_object('prices', p_prices, 'effective_from', p_effective_from)
    );
    return v_id;
end
$$;

-- The catalogue: each model with the snapshot in force at p_at (admin, service).
create or replace function costwarden.fn_pricing_list(p_model text default null, p_at timestamptz default now())
returns table (
    model text, provider text, platform_servable boolean, pricing_snapshot_id bigint,
    prices jsonb, effective_from timestamptz
)
language sql stable security definer set search_path = pg_catalog, pg_temp
as $$
    select m.model, m.provider, m.platform_servable, s.snapshot_id, s.prices, s.effective_from
    from costwarden._models as m
    left join lateral (
        select ps.snapshot_id, ps.prices, ps.effective_from
        from costwarden._pricing_snapshots as ps
        where ps.model = m.model and ps.effective_from <= coalesce(p_at, now())
        order by ps.effective_from desc
        limit 1
    ) as s on true
    where p_model is null or m.model = p_model
    order by m.model
$$;

-- Every snapshot of one model (or all), oldest first (admin, service).
create or replace function costwarden.fn_pricing_history(p_model text default null)
returns table (model text, pricing_snapshot_id bigint, prices jsonb, effective_from timestamptz, created_at timestamptz)
language sql stable security definer set search_path = pg_catalog, pg_temp
as $$
    select ps.model, ps.snapshot_id, ps.prices, ps.effective_from, ps.created_at
    from costwarden._pricing_snapshots as ps
    where p_model is null or ps.model = p_model
    order by ps.model, ps.effective_from
$$;

-- Internal: the credit rate of an org (org setting, else runtime setting).
create or replace function costwarden._credit_rate(p_org_id text)
returns numeric
language sql stable
as $$
    select coalesce(
        (select (o.settings ->> 'credit_rate_usd')::numeric from costwarden._orgs as o where o.org_id = p_org_id),
        (costwarden._setting('credit_rate_usd') #>> '{}')::numeric
    )
$$;

-- Internal: price a usage for a model now (no policy check): the snapshot in
-- force (null when none), the cost, the token count, the unpriced units.
create or replace function costwarden._quote_price(
    p_model text, p_usage jsonb,
    out amount_micros bigint, out tokens bigint, out snapshot_id bigint, out unpriced_units text[]
)
language plpgsql stable
as $$
declare
    v_prices jsonb;
    v_p record;
begin
    select ps.snapshot_id, ps.prices into snapshot_id, v_prices
    from costwarden._pricing_snapshots as ps
    where ps.model = p_model and ps.effective_from <= now()
    order by ps.effective_from desc
    limit 1;
    v_p := costwarden._usage_price(p_usage, coalesce(v_prices, '{}'));
    amount_micros := v_p.amount_micros;
    tokens := v_p.tokens;
    unpriced_units := v_p.unpriced;
end
$$;

-- Internal: the unpriced policy. Returns true when the price is incomplete
-- (no snapshot in force, or a used unit without a price) and the policy is
-- 'free'; raises CW006 when it is incomplete and the policy is 'reject'.
create or replace function costwarden._unpriced_check(p_model text, p_snapshot_id bigint, p_unpriced_units text[])
returns boolean
language plpgsql stable
as $$
begin
    if p_snapshot_id is not null and cardinality(p_unpriced_units) = 0 then
        return false;
    end if;
    if costwarden._setting('unpriced_policy') = '"free"' then
        return true;
    end if;
    if p_snapshot_id is null then
        perform costwarden._raise('CW006', format('p_model: no pricing snapshot in force for model %L', p_model),
            'load prices with fn_pricing_set, or set unpriced_policy to free');
    end if;
    perform costwarden._raise('CW006', format(
        'p_usage: unit(s) %s have no price in snapshot %s of model %L',
        array_to_string(p_unpriced_units, ', '), p_snapshot_id, p_model));
    return true;
end
$$;

-- Internal: price a usage for a model now. Raises CW006 for an unpriced model
-- (or a used unit without a price) unless unpriced_policy = 'free'.
create or replace function costwarden._quote(
    p_model text, p_usage jsonb,
    out amount_micros bigint, out tokens bigint, out snapshot_id bigint, out unpriced boolean
)
language plpgsql stable
as $$
declare
    v_p record;
begin
    select * into v_p from costwarden._quote_price(p_model, p_usage);
    amount_micros := v_p.amount_micros;
    tokens := v_p.tokens;
    snapshot_id := v_p.snapshot_id;
    unpriced := costwarden._unpriced_check(p_model, v_p.snapshot_id, v_p.unpriced_units);
end
$$;

-- Internal: validate and price a usage at a reservation's snapshot. CW006 for
-- a used unit the snapshot does not price (unless unpriced_policy = 'free').
create or replace function costwarden._reservation_price(
    p_snapshot_id bigint, p_usage jsonb, out tokens bigint, out amount_micros bigint
)
language plpgsql stable
as $$
declare
    v_prices jsonb;
    v_p record;
begin
    select ps.prices into v_prices from costwarden._pricing_snapshots as ps where ps.snapshot_id = p_snapshot_id;
    v_p := costwarden._usage_price(p_usage, coalesce(v_prices, '{}'));
    if cardinality(v_p.unpriced) > 0 and p_snapshot_id is not null
       and costwarden._setting('unpriced_policy') <> '"free"' then
        perform costwarden._raise('CW006', format(
            'p_usage: unit(s) %s have no price in the reservation''s pricing snapshot %s',
            array_to_string(v_p.unpriced, ', '), p_snapshot_id));
    end if;
    tokens := v_p.tokens;
    amount_micros := v_p.amount_micros;
end
$$;

create or replace function costwarden.fn_cost_quote(p_org_id text, p_workspace_id text, p_model text, p_usage jsonb)
returns table (
    amount_micros bigint, tokens bigint, pricing_snapshot_id bigint, billing_mode text, credits numeric
)
language plpgsql stable security definer set search_path = pg_catalog, pg_temp
as $$
declare
    v_ws costwarden._workspaces := costwarden._require_workspace(p_org_id, p_workspace_id);
    v_q record;
begin
    perform costwarden._tenant_guard(p_org_id);
    perform costwarden._require_model(p_model);
    select * into v_q from costwarden._quote(p_model, p_usage);
    return query select v_q.amount_micros, v_q.tokens, v_q.snapshot_id,
        (costwarden._billing_mode(v_ws)).billing_mode,
        round(v_q.amount_micros / 1000000.0 / costwarden._credit_rate(p_org_id), 6);
end
$$;

grant execute on function costwarden.fn_pricing_set(text, jsonb, timestamptz) to costwarden_admin;
grant execute on function costwarden.fn_pricing_list(text, timestamptz) to costwarden_admin, costwarden_service;
grant execute on function costwarden.fn_pricing_history(text) to costwarden_admin, costwarden_service;
grant execute on function costwarden.fn_cost_quote(text, text, text, jsonb) to costwarden_service;
