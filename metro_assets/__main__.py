from metro_assets.cli import main

if __name__ == "__main__":
    main()
